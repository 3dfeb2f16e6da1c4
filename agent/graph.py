"""The whole distillation pipeline on one screen: wiring only, node bodies live in their own modules."""
from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from foster.agent.characterize import characterize
from foster.agent.context import RunContext
from foster.agent.decide import decide, route
from foster.agent.evaluate import evaluate
from foster.agent.export import bundle
from foster.agent.lora.node import lora
from foster.agent.mine import mine
from foster.agent.optimize_node import optimize
from foster.agent.probe import probe
from foster.agent.state import NODES, InputState, State

_BODIES = {"probe": probe, "characterize": characterize, "mine": mine, "optimize": optimize, "evaluate": evaluate,
           "decide": decide, "lora": lora, "bundle": bundle}


def build_graph(checkpointer=None):
    g = StateGraph(State, input_schema=InputState, context_schema=RunContext)
    for name in NODES:
        g.add_node(name, _BODIES[name])

    g.add_edge(START, "probe")
    g.add_edge("probe", "characterize")
    g.add_edge("characterize", "mine")
    g.add_edge("mine", "optimize")
    g.add_edge("optimize", "evaluate")
    g.add_edge("evaluate", "decide")
    g.add_conditional_edges("decide", route, ["probe", "lora", "bundle"])
    g.add_edge("lora", "bundle")
    g.add_edge("bundle", END)
    return g.compile(checkpointer=checkpointer)
