"""Every README code block marked ``<!-- runnable -->`` runs, in order, as a new user would run it."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Small settings for the command-line jobs (the CLI appends $GOLDEN_PTQ_<JOB>_ARGS to a job's options).
SMALL = {
    "GOLDEN_PTQ_QUANTIZE_ARGS": "--calib-samples 1 --eval-windows 1 --seq-length 64 --quiet",
    "GOLDEN_PTQ_EVAL_ARGS": "--eval-windows 1 --seq-length 64 --quiet",
    "GOLDEN_PTQ_GENERATE_ARGS": "--max-new-tokens 4 --quiet",
    "GOLDEN_PTQ_ANALYZE_ARGS": "--calib-samples 1 --seq-length 64 --quiet",
    "GOLDEN_PTQ_TUNE_ARGS": "--calib-samples 1 --eval-windows 2 --seq-length 64 --quiet",
}


def readme_blocks(marker: str = "<!-- runnable -->"):
    """(language, code) of every fenced block right after ``marker``, in README order."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    pattern = re.escape(marker) + r"\s*\n```(\w+)\n(.*?)\n```"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, text, re.S)]


def test_readme_has_runnable_python_and_bash():
    languages = [lang for lang, _ in readme_blocks()]
    assert "python" in languages and "bash" in languages
    assert readme_blocks("<!-- setup -->") and readme_blocks("<!-- test-command -->")


@pytest.mark.slow
def test_readme_blocks_run(tmp_path, smollm2_gguf):
    env = dict(os.environ, **SMALL)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for index, (language, code) in enumerate(readme_blocks()):
        if language == "python":
            command = [sys.executable, "-c", code]
        elif language == "bash":
            command = ["bash", "-euo", "pipefail", "-c", code]
        else:
            pytest.fail(f"README block {index} is marked runnable but is {language!r}, not python or bash")
        result = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"README block {index} ({language}) failed:\n{code}\n{result.stderr[-3000:]}"
