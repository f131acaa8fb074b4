"""CI's skip policy (tests/conftest.py): only a skip naming an optional dependency passes, or none at all."""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = '''
import pytest

def test_optional():
    pytest.skip("optional dependency foo is not installed")

def test_other():
    pytest.skip("flaky on this machine")
'''


MODULE_SKIP = '''
import pytest

pytest.skip("optional dependency bar is not installed", allow_module_level=True)
'''


@pytest.mark.parametrize("strict, failed, errors", [(None, 0, 0), ("1", 1, 0), ("all", 0, 1)])
def test_skips_fail_by_policy(tmp_path, strict, failed, errors):
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)  # skipped whole, at collection: under "all"
    # that is a collection error, which stops the run before any test
    env = {k: v for k, v in os.environ.items() if k != "GOLDEN_PTQ_STRICT_SKIPS"}
    if strict:
        env["GOLDEN_PTQ_STRICT_SKIPS"] = strict
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, cwd=str(tmp_path), env=env)
    summary = result.stdout.strip().splitlines()[-1]
    assert (f"{failed} failed" in summary) if failed else ("failed" not in summary), result.stdout[-1500:]
    assert (f"{errors} error" in summary) if errors else ("error" not in summary), result.stdout[-1500:]
    assert (result.returncode != 0) == bool(failed or errors)
