"""Policy parser golden files: `bad-N.yaml` (or a folder `bad-N/`) beside `bad-N.err`.

Each case is loaded from the repository root, so the paths in the messages are the ones an
operator would see; the text of every diagnostic must equal the .err file exactly. `warn-N` cases
are valid policies whose warnings are compared the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fw.policy import PolicyError, load_policy

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path("tests/policy_golden")
CASES = sorted(p.name.removesuffix(".yaml") for p in (ROOT / GOLDEN).iterdir() if p.suffix != ".err")


def expected(case: str) -> str:
    return (ROOT / GOLDEN / f"{case}.err").read_text()


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("bad-")])
def test_bad_policy_reports_every_error_exactly(case, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = GOLDEN / case if (ROOT / GOLDEN / case).is_dir() else GOLDEN / f"{case}.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(str(path))
    diagnostics = caught.value.diagnostics + caught.value.warnings
    assert "".join(d.format() + "\n" for d in diagnostics) == expected(case)
    assert all(d.is_error for d in caught.value.diagnostics)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("warn-")])
def test_valid_policy_warnings_exactly(case, monkeypatch):
    monkeypatch.chdir(ROOT)
    policy = load_policy(str(GOLDEN / f"{case}.yaml"))
    assert "".join(w.format() + "\n" for w in policy.warnings) == expected(case)


def test_every_case_has_its_expected_text():
    cases = set(CASES)
    errs = {p.stem for p in (ROOT / GOLDEN).glob("*.err")}
    assert cases == errs
    assert len([c for c in cases if c.startswith("bad-")]) >= 14
    assert all(expected(case).strip() for case in cases)


def test_the_spec_example_is_reproduced_to_the_character():
    """SPEC: `policies/lab.yaml:14:13: error: unknown action 'alow' ...` and its two lines."""
    lines = expected("bad-4").splitlines()
    assert lines == [
        "tests/policy_golden/bad-4.yaml:14:13: error: unknown action 'alow' (expected accept, drop, reject)",
        "   14 |     action: alow",
        "      |             ^^^^",
    ]
