"""The cutover commands: deploy, shadow, readiness, refine, promote, rollback.

They read and write foster_home()/deployments.json directly (as `foster serve` does), so they work
with or without a server running; a running server sees a promote within a second.
"""
from __future__ import annotations

import json

from foster.ui.cli import Command, CommandError


def _store():
    from foster.ui.deployments import deployment_store

    return deployment_store()


def _deployment(name: str):
    found = _store().get(name)
    if found is None:
        raise CommandError(f"no deployment {name!r} (see `foster deploy --help`)")
    return found


def _fail(exc) -> CommandError:
    return CommandError(getattr(exc, "message", str(exc)))


def _fmt(a) -> str:
    if not a.requests:
        return "no shadowed requests yet"
    return (f"agreement {a.rate:.3f} (95 % CI {a.low:.3f}–{a.high:.3f}) on n={a.requests}: "
            f"{a.agreements} agree, {a.disagreements} disagree")


# -- foster deploy ----------------------------------------------------------------------------


def _deploy_arguments(p) -> None:
    p.add_argument("name", help="the model name clients send, e.g. the retired fine-tune's id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", help="a bundle id (see GET /v1/bundles)")
    which.add_argument("--run", help="a run id whose best bundle to serve, or `latest`")
    p.add_argument("--target", help="serve on this model instead of the bundle's target")
    p.add_argument("--shadow", metavar="TEACHER", help="also ask this live teacher (litellm string) and count agreement")
    p.add_argument("--shadow-rate", type=float, default=0.1, help="fraction of requests shadowed (default 0.1)")
    p.add_argument("--replace", action="store_true", help="an existing name: serve this bundle as its next version")


def _best_bundle_of(run: str) -> str:
    from foster.prompts.bundle import Bundle
    from foster.store.runs import RunRegistry

    registry = RunRegistry()
    statuses = [s for s in registry.list() if s.best_bundle] if run == "latest" else [registry.get(run)]
    status = statuses[0] if statuses else None
    if status is None or not status.best_bundle:
        raise CommandError(f"no run {run!r} with a best bundle (see `foster runs`)")
    return Bundle.load(status.best_bundle).id


def _deploy_run(args) -> int:
    from foster.agent.gateway import UnknownModelError, check_model
    from foster.ui.deployments import (  # noqa: F401
        DeploymentError,
        DeploymentRequest,
        Shadow,
        warm_up,
    )

    bundle_id = args.bundle or _best_bundle_of(args.run)
    for model in filter(None, [args.target, args.shadow]):
        try:
            check_model(model)
        except UnknownModelError as exc:
            raise CommandError(f"{model}: {exc}") from None
    request = DeploymentRequest(name=args.name, bundle_id=bundle_id, target=args.target,
                                shadow=Shadow(teacher=args.shadow, sample_rate=args.shadow_rate) if args.shadow else None)
    try:
        d = _store().create(request, replace=args.replace)
    except DeploymentError as exc:
        raise _fail(exc) from None
    shadow = f", shadowed by {d.shadow.teacher} at {d.shadow.sample_rate:g}" if d.shadow else ""
    print(f"{d.name}: version {d.active} serves bundle {d.bundle_id} on {d.target}{shadow}")
    return 0


# -- foster shadow ----------------------------------------------------------------------------


def _shadow_arguments(p) -> None:
    p.add_argument("name", help="a deployment name")
    p.add_argument("--version", default=None, help="a version number or `all` (default: the served version)")
    p.add_argument("--divergences", type=int, default=5, metavar="N", help="show the N newest divergences (default 5)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")


def _shadow_run(args) -> int:
    from foster.ui.deployments import divergences, shadow_stats

    d = _deployment(args.name)
    version = "all" if args.version == "all" else (int(args.version) if args.version else None)
    stats = shadow_stats(d, version)
    if args.json:
        print(json.dumps(stats.model_dump(), indent=2, ensure_ascii=False))
        return 0
    label = "every version" if version == "all" else f"version {version or d.active}"
    print(f"{d.name} ({label}, shadowed by {d.shadow.teacher if d.shadow else 'nobody'}): {_fmt(stats.overall)}")
    for c in stats.clusters:
        print(f"  cluster {c.cluster}: {_fmt(c)}" + (f"  e.g. {c.examples[0]!r}" if c.examples else ""))
    rows = divergences(d.name, args.divergences, None if version == "all" else (version or d.active))
    if rows:
        print("newest divergences (input | teacher | served):")
        for r in rows:
            print(f"  {r['input'][:70]!r} | {str(r.get('teacher_output', '')).strip()[:30]!r} | "
                  f"{str(r.get('target_output', '')).strip()[:30]!r}")
    return 0


# -- foster readiness -------------------------------------------------------------------------


def _readiness_arguments(p) -> None:
    p.add_argument("name", help="a deployment name")
    p.add_argument("--min-requests", type=int, help="shadowed requests needed (default 30)")
    p.add_argument("--min-cluster-requests", type=int, help="clusters with this many requests must pass too (default 10)")
    p.add_argument("--threshold", type=float, help="agreement lower bound needed (default: the run's threshold)")


def _readiness_run(args) -> int:
    """Exit 0 when ready, 1 when not: usable as a gate in a deploy script."""
    from foster.ui.deployments import readiness

    verdict = readiness(_deployment(args.name), min_requests=args.min_requests,
                        min_cluster_requests=args.min_cluster_requests, threshold=args.threshold)
    print(f"{args.name}: {'ready' if verdict.ready else 'not ready'}: {verdict.reason}")
    return 0 if verdict.ready else 1


# -- foster refine ----------------------------------------------------------------------------


def _refine_arguments(p) -> None:
    p.add_argument("name", help="a deployment name")
    p.add_argument("--agreeing-ratio", type=float, default=1.0,
                   help="agreeing live inputs sampled per divergent one (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the parent run's config for this run (JSON values), e.g. --set budget_calls=8")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a refine run already prepared (the API's child process)")
    p.add_argument("--quiet", action="store_true", help="print only the result")


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"--set {pair}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _refine_run(args) -> int:
    from foster.agent.config import InputError
    from foster.ui.deployments import DeploymentError, complete_refine, start_refine

    _deployment(args.name)
    try:
        run_id = args.resume
        if run_id is None:
            plan = start_refine(args.name, agreeing_ratio=args.agreeing_ratio, overrides=_overrides(args.set))
            run_id = plan.run_id
            if not args.quiet:
                print(f"refine run {run_id} (parent {plan.parent_run_id}): {plan.divergent} divergent and "
                      f"{plan.agreeing} agreeing live inputs as new probes, {plan.new_heldout} held out")
        version = complete_refine(args.name, run_id)
    except (DeploymentError, InputError) as exc:
        raise _fail(exc) from None
    print(f"{args.name}: version {version.version} = bundle {version.bundle_id} on {version.target} "
          f"(run {run_id}); serve it with `foster promote {args.name}`")
    return 0


# -- foster promote / rollback ----------------------------------------------------------------


def _promote_arguments(p) -> None:
    p.add_argument("name", help="a deployment name")
    p.add_argument("--version", type=int, help="the version to serve (default: the newest)")


def _promote_run(args) -> int:
    from foster.ui.deployments import DeploymentError

    try:
        d = _store().promote(args.name, args.version)
    except DeploymentError as exc:
        raise _fail(exc) from None
    print(f"{d.name}: now serving version {d.active} (bundle {d.bundle_id} on {d.target})")
    return 0


def _rollback_arguments(p) -> None:
    p.add_argument("name", help="a deployment name")


def _rollback_run(args) -> int:
    from foster.ui.deployments import DeploymentError

    try:
        d = _store().rollback(args.name)
    except DeploymentError as exc:
        raise _fail(exc) from None
    print(f"{d.name}: rolled back to version {d.active} (bundle {d.bundle_id} on {d.target})")
    return 0


COMMANDS = [
    Command("deploy", "serve a bundle under a name (e.g. the retired fine-tune's), optionally shadowed by the teacher",
            _deploy_arguments, _deploy_run),
    Command("shadow", "a deployment's agreement with its shadow teacher: overall, per cluster, newest divergences",
            _shadow_arguments, _shadow_run),
    Command("readiness", "is a deployment ready to cut over? (exit 0 ready, 1 not)", _readiness_arguments, _readiness_run),
    Command("refine", "distil again from a deployment's divergent live inputs; adds a bundle version",
            _refine_arguments, _refine_run),
    Command("promote", "serve a deployment's newest (or given) version, atomically", _promote_arguments, _promote_run),
    Command("rollback", "serve again the version served before the current one", _rollback_arguments, _rollback_run),
]
