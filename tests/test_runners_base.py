"""The Runner protocol (runners/base.py): every implementation has every member the campaign
loops use, with a signature the loops can call the same way."""

import inspect

from pretrainlab.research.simulate import Landscape, SimulatedRunner
from pretrainlab.runners import LocalRunner, Runner
from pretrainlab.runners.base import SlotRunner
from pretrainlab.runners.ray import RayRunner

METHODS = sorted(n for n, v in vars(Runner).items() if inspect.isfunction(v) and not n.startswith("_"))
ATTRIBUTES = sorted(Runner.__annotations__)


def mismatches(impl) -> list[str]:
    """How `impl` (a class, or an instance for its attributes too) falls short of the protocol."""
    out = []
    for name in METHODS:
        method = getattr(impl, name, None)
        if not callable(method):
            out.append(f"{name}: missing")
            continue
        want = list(inspect.signature(getattr(Runner, name)).parameters.values())[1:]  # less self
        have = inspect.signature(method).parameters
        have = list(have.values())[1:] if isinstance(impl, type) else list(have.values())
        for i, p in enumerate(want):
            q = have[i] if i < len(have) else None
            if q is None or q.name != p.name or q.kind != p.kind or q.default != p.default:
                out.append(f"{name}: parameter {p} is {q} there")
        out += [f"{name}: extra parameter {q} without a default" for q in have[len(want):] if q.default is q.empty]
    if not isinstance(impl, type):
        out += [f"{name}: missing attribute" for name in ATTRIBUTES if not hasattr(impl, name)]
    return out


def test_every_runner_has_every_member_of_the_protocol(tmp_path):
    assert METHODS and {"submit", "poll", "stop", "take_events", "scoring_resources"} <= set(METHODS)
    assert ATTRIBUTES == ["created", "last_submit", "num_slots", "sandbox"]
    local = LocalRunner(num_slots=1, log_dir=tmp_path, sandbox=False)
    simulated = SimulatedRunner(Landscape(), num_slots=1)
    for impl in (local, simulated, RayRunner):
        assert mismatches(impl) == [], impl
    assert isinstance(local, Runner) and isinstance(simulated, Runner)
    assert issubclass(RayRunner, SlotRunner)  # its attributes are the ones LocalRunner's instance has (SlotRunner.__init__)


def test_the_check_sees_a_runner_that_falls_short():
    class Short(SimulatedRunner):
        def stop(self, key, why="stopped"):  # a renamed parameter: campaign code calls stop(key, reason=...)
            pass

        def sleep(self, seconds, forever):  # a required extra parameter
            pass

    Short.take_events = None
    found = mismatches(Short)
    assert any(m.startswith("stop: parameter reason") for m in found), found
    assert any(m.startswith("sleep: extra parameter forever") for m in found), found
    assert "take_events: missing" in found
