"""Code experiments: patches apply to an isolated copy; read-only code is protected."""

import difflib
import json

import pytest
from conftest import tiny_overrides

from pretrainlab import eval as evaluation
from pretrainlab.research.patches import PACKAGE_DIR, PatchRejected, apply_patch, touched_files
from pretrainlab.runners import Job, LocalRunner


def make_patch(rel: str, old: str, new: str) -> str:
    src = (PACKAGE_DIR / rel).read_text()
    assert old in src
    return "".join(difflib.unified_diff(src.splitlines(True), src.replace(old, new).splitlines(True),
                                         f"a/src/pretrainlab/{rel}", f"b/src/pretrainlab/{rel}"))


GELU = make_patch("model/gpt.py", "relu_squared(self.c_fc(x))", "F.gelu(self.c_fc(x))")


def test_patched_copy_runs_and_changes_training(corpus_dir, tmp_path):
    tree = apply_patch(GELU, tmp_path / "tree")
    assert tree.files == ["src/pretrainlab/model/gpt.py"]
    assert "F.gelu(self.c_fc(x))" in (tmp_path / "tree/src/pretrainlab/model/gpt.py").read_text()
    assert "relu_squared(self.c_fc(x))" in (PACKAGE_DIR / "model/gpt.py").read_text()  # the lab's copy is untouched
    runner = LocalRunner(num_slots=2)
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 4096})
    runner.submit(Job("patched", "tiny-cpu", tmp_path / "patched", overrides, pythonpath=tree.pythonpath))
    runner.submit(Job("plain", "tiny-cpu", tmp_path / "plain", overrides))
    results = {r.job.key: r for r in runner.wait() + runner.wait()}
    assert results["patched"].status == results["plain"].status == "ok"
    assert results["patched"].summary["val_bpb"] != results["plain"].summary["val_bpb"]
    prov = json.loads((tmp_path / "patched" / "provenance.json").read_text())
    assert prov["eval_module_sha256"] == evaluation.module_sha256()


@pytest.mark.parametrize("rel, old, new", [
    ("eval.py", '"val_bpb": bits_per_byte(total_nats, total_bytes),', '"val_bpb": 0.5 * bits_per_byte(total_nats, total_bytes),'),
    ("data/windows.py", "return nats / math.log(2) / num_bytes", "return 0.5 * nats / math.log(2) / num_bytes"),
    ("data/windows.py", "tokens = corpus.tokens(domain, split)", "tokens = corpus.tokens(domain, \"train\")"),
    ("data/loader.py", "window[picked] = self.arrays[d]", "window[picked] = 0 * self.arrays[d]"),
    ("runners/scoring.py", "sums[split][d] += nll_sums(row, y, token_bytes)", "sums[split][d] += (0.0, 1, 1)"),
])
def test_patches_to_the_metric_or_data_are_rejected(tmp_path, rel, old, new):
    with pytest.raises(PatchRejected, match="read-only"):
        apply_patch(make_patch(rel, old, new), tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_path_tricks_and_garbage_are_rejected(tmp_path):
    sneaky = GELU.replace("src/pretrainlab/model/gpt.py", "src/pretrainlab/model/../eval.py")
    with pytest.raises(PatchRejected):
        apply_patch(sneaky, tmp_path / "a")
    with pytest.raises(PatchRejected, match="not a unified diff"):
        apply_patch("make it faster please", tmp_path / "b")
    stale = GELU.replace("relu_squared(self.c_fc(x))", "F.relu(self.c_fc(x)).cube()")
    with pytest.raises(PatchRejected, match="does not apply"):
        apply_patch(stale, tmp_path / "c")


def test_touched_files():
    assert touched_files(GELU) == ["src/pretrainlab/model/gpt.py"]


def test_a_binary_hunk_cannot_add_a_file_outside_the_package(tmp_path):
    """A binary hunk names its file only in its `diff --git` line: a patch that changed model/gpt.py and slipped in
    src/sitecustomize.py (run first by every Python started on the tree) was accepted."""
    import subprocess

    repo = tmp_path / "repo"
    (repo / "src" / "pretrainlab" / "model").mkdir(parents=True)
    gpt = (PACKAGE_DIR / "model" / "gpt.py").read_text()
    (repo / "src" / "pretrainlab" / "model" / "gpt.py").write_text(gpt)
    git = lambda *a: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=repo, check=True,
                                    capture_output=True, text=True).stdout
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    (repo / "src" / "pretrainlab" / "model" / "gpt.py").write_text(gpt.replace("is_causal=True", "is_causal=True ", 1))
    (repo / "src" / "sitecustomize.py").write_bytes(b"import os\x00\nos.system('touch /tmp/pwned')\n")
    git("add", "-A")
    patch = git("diff", "--cached", "--binary", "HEAD")
    assert "sitecustomize" in patch and "--- a/src/sitecustomize.py" not in patch  # no headers for the binary file
    with pytest.raises(PatchRejected, match="adds src/sitecustomize.py"):
        apply_patch(patch, tmp_path / "tree")
