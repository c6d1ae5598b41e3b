import os
import subprocess
import sys

import pytest


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


@pytest.mark.parametrize(
    "script, expected",
    [
        ("quickstart.py", "reloaded adapter reproduces the outputs: True"),
        ("lora_stacking.py", "merged == conditioned: True"),
        ("merged_task_with_trainer.py", "final training loss"),
    ],
)
def test_example_runs(script, expected):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
