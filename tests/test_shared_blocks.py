"""Shared blocks stay equal across scripts (STYLE.md, "Between files").

A block copied between scripts is marked

    # --- shared: NAME ---
    ...
    # --- end shared ---

and every copy of NAME must be text-identical to the first one, so that a fix cannot land in
one copy only. Scanned: every *.py at the repository root and under baselines/.
"""

import difflib
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
OPEN = re.compile(r"^\s*# --- shared: (?P<name>\S.*?) ---\s*$")
CLOSE = re.compile(r"^\s*# --- end shared ---\s*$")


def script_files(root: Path = REPO_ROOT) -> list[Path]:
    return sorted(root.glob("*.py")) + sorted((root / "baselines").glob("**/*.py"))


def parse_shared_blocks(text: str, where: str = "<text>") -> dict[str, str]:
    """{NAME: the lines between the markers}; ValueError on an unclosed, stray, nested or repeated block."""
    blocks: dict[str, str] = {}
    name, start, body = None, 0, []
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        opened, closed = OPEN.match(line), CLOSE.match(line)
        if opened:
            if name is not None:
                raise ValueError(f"{where}:{lineno}: block {opened['name']!r} opens inside block {name!r} (line {start})")
            name, start, body = opened["name"], lineno, []
        elif closed:
            if name is None:
                raise ValueError(f"{where}:{lineno}: '# --- end shared ---' without an open block")
            if name in blocks:
                raise ValueError(f"{where}:{start}: block {name!r} appears twice in one file")
            blocks[name] = "".join(body)
            name = None
        elif name is not None:
            body.append(line)
    if name is not None:
        raise ValueError(f"{where}:{start}: block {name!r} is opened and never closed")
    return blocks


def collect(files: list[Path]) -> dict[str, list[tuple[Path, str]]]:
    """{NAME: [(file, body), ...]} in file order."""
    copies: dict[str, list[tuple[Path, str]]] = {}
    for path in files:
        for name, body in parse_shared_blocks(path.read_text(), str(path)).items():
            copies.setdefault(name, []).append((path, body))
    return copies


def mismatches(copies: dict[str, list[tuple[Path, str]]]) -> list[str]:
    problems = []
    for name, versions in copies.items():
        first_path, first_body = versions[0]
        for path, body in versions[1:]:
            if body != first_body:
                diff = "".join(
                    difflib.unified_diff(
                        first_body.splitlines(keepends=True), body.splitlines(keepends=True), str(first_path), str(path)
                    )
                )
                problems.append(
                    f"shared block {name!r} differs from its first copy (if these are different blocks, "
                    f"give them different names: names are project-wide):\n{diff}"
                )
    return problems


# --- the repository ---


@pytest.mark.parametrize("path", script_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_block_is_closed(path):
    parse_shared_blocks(path.read_text(), str(path))


def test_every_copy_equals_the_first():
    problems = mismatches(collect(script_files()))
    assert not problems, "\n".join(problems)


def test_sac_and_ce_sac_share_marked_blocks():
    # ce_sac.py copies its backbone from baselines/sac.py; if neither carries a marked block,
    # the copies are unguarded and the equality test above checks nothing.
    sac, ce = REPO_ROOT / "baselines" / "sac.py", REPO_ROOT / "ce_sac.py"
    missing = [str(p.relative_to(REPO_ROOT)) for p in (sac, ce) if not p.exists()]
    assert not missing, f"missing scripts: {missing}"
    common = set(parse_shared_blocks(sac.read_text())) & set(parse_shared_blocks(ce.read_text()))
    assert common, "baselines/sac.py and ce_sac.py share no '# --- shared: NAME ---' block"


def test_maddpg_and_mesa_share_the_whole_learner():
    # mesa_maddpg.py carries MADDPG as marked copies of baselines/maddpg.py's blocks (equality: above)
    base = parse_shared_blocks((REPO_ROOT / "baselines" / "maddpg.py").read_text())
    mesa = parse_shared_blocks((REPO_ROOT / "mesa_maddpg.py").read_text())
    assert set(base) == {"paper-defaults", "networks", "buffer", "maddpg", "cli", "checkpoint", "maddpg-resume", "cpu-memory"}
    assert set(mesa) == set(base)


# --- the checker itself, on made-up files (so that the tests above can fail) ---


def test_checker_finds_an_unclosed_block():
    with pytest.raises(ValueError, match="never closed"):
        parse_shared_blocks("x = 1\n# --- shared: update ---\ny = 2\n")


def test_checker_finds_a_nested_or_stray_marker():
    with pytest.raises(ValueError, match="opens inside"):
        parse_shared_blocks("# --- shared: a ---\n# --- shared: b ---\n# --- end shared ---\n")
    with pytest.raises(ValueError, match="without an open block"):
        parse_shared_blocks("y = 2\n# --- end shared ---\n")


def test_checker_finds_a_drifted_copy(tmp_path):
    block = "# --- shared: update ---\n    loss = {}\n# --- end shared ---\n"
    (tmp_path / "a.py").write_text("import torch\n" + block.format("q - target"))
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "b.py").write_text(block.format("q - target"))
    assert mismatches(collect(script_files(tmp_path))) == []
    (tmp_path / "c.py").write_text(block.format("(q - target) ** 2"))
    (problem,) = mismatches(collect(script_files(tmp_path)))
    assert "'update'" in problem and "c.py" in problem


def test_checker_reads_indented_markers_and_keeps_indentation():
    text = "def f():\n    # --- shared: g ---\n    return 1\n    # --- end shared ---\n"
    assert parse_shared_blocks(text) == {"g": "    return 1\n"}


# Which marked blocks each script must carry, so that removing a marker (and with it the guard above) fails.
EQUATIONS = {"knn-novelty", "collaborative-reward", "info-nce-loss", "collaborative-action", "candidate-actions"}
EXPECTED = {
    "baselines/sac.py": {"sac-networks", "sac-update", "replay-buffer", "cli", "checkpoint"},
    "ce_sac.py": {"sac-networks", "sac-update", "same-episode", "cli", "checkpoint"} | EQUATIONS,
    "ce_rnd.py": {"sac-networks", "sac-update", "replay-buffer", "cli", "checkpoint", "collaborative-reward",
                  "collaborative-action", "candidate-actions"},
    "baselines/drq.py": {"sac-networks", "drq-networks", "drq-update", "cli", "checkpoint", "cpu-memory"},
    "ce_drq.py": {"sac-networks", "drq-networks", "drq-update", "same-episode", "cli", "checkpoint", "cpu-memory"} | EQUATIONS,
    "baselines/sunrise.py": {"sac-networks", "cli", "checkpoint"},
    "baselines/dice.py": {"sac-networks", "replay-buffer", "cli", "checkpoint"},
    "baselines/diayn.py": {"sac-networks", "sac-update", "cli", "checkpoint"},
    "baselines/a2c.py": {"cli", "checkpoint"},
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_each_script_carries_its_marked_blocks(path):
    # e.g. ce_drq.py carries ce_sac.py's Eqs. 2-5 and baselines/drq.py's backbone; the equality test holds them equal
    blocks = set(parse_shared_blocks((REPO_ROOT / path).read_text()))
    assert EXPECTED[path] <= blocks, f"{path} lacks the marked blocks {sorted(EXPECTED[path] - blocks)}"
