"""Runs or resumes a distillation with the scripted fakes in a child process (the kill/resume test).

usage: python tests/fake_run.py start|resume RUN_ID INPUTS CALL_LOG
Every teacher call appends "probe|temperature|sample" to CALL_LOG, so the test can count repeats.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402

from foster.agent.local.fake import ScriptedBackend  # noqa: E402
from foster.agent.local.registry import register_backend  # noqa: E402

mode, run_id, inputs, log = sys.argv[1:5]


def slow_teacher(req):
    with open(log, "a") as f:
        f.write(json.dumps([fakes._last_user(req.messages_or_prompt), req.temperature, req.seed]) + "\n")
    time.sleep(0.05)
    return fakes.teacher(req)


register_backend("fake-teacher", ScriptedBackend(slow_teacher))
register_backend("fake-target", ScriptedBackend(fakes.target))
from foster.agent.runs import resume_run, start_run  # noqa: E402

if mode == "start":
    start_run({"teacher": "local/fake-teacher", "targets": ["local/fake-target"], "inputs": inputs,
               "task": "Route the ticket.", "budget_calls": 10, "max_rounds": 1, "samples": 3, "run_id": run_id})
else:
    resume_run(run_id)
