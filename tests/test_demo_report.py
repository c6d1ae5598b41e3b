"""benchmarks/demo_report.py on the committed sweep results: the table the docs quote is the JSON's numbers."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "benchmarks" / "results" / "demo_sweep.json"


def test_sweep_report_prints_each_sparsity_and_its_paired_claims():
    results = json.loads(SWEEP.read_text())
    report = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_report.py"), str(SWEEP)],
                            capture_output=True, text=True, check=True).stdout
    lines = report.splitlines()
    for tau, run in results["sweep"].items():
        five_shot = run["summary"]["5w5s"]
        row = next(line for line in lines if line.startswith(f"| {tau} | ") and "/" in line)
        assert f"{five_shot['id']:.1f} / {five_shot['ood']:.1f}" in row
        assert f"{min(run['eval_mask_sparsity']):.3f}–{max(run['eval_mask_sparsity']):.3f}" in row
        for entry in run["vs_pretrained"]:
            low, high = entry["ci95"]
            cell = f"{entry['difference']:+.1f} [{low:+.1f}, {high:+.1f}] {entry['claim']}"
            assert any(line.startswith(f"| {tau} | {entry['setting']} |") and cell in line for line in lines)
    assert any(line.startswith("| pre-trained |") for line in lines)
