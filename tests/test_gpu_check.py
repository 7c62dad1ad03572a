"""benchmarks/gpu_check.py runs on a CPU with tiny sizes and writes its Markdown table."""

import os
import sys

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_gpu_check_tiny_on_cpu_writes_the_table(tmp_path):
    import gpu_check

    out = tmp_path / "gpu_check.md"
    # the compiled row is left out here (tracing takes long on a small CPU); tests/test_compile.py covers it
    gpu_check.main(["--tiny", "--no-compile", "--out", str(out)])
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "measurement" not in line]
    assert [row.split(" | ")[0] for row in rows[:3]] == ["| PGD-7 AT, fp32", "| PGD-7 AT, bf16-mixed",
                                                          "| PGD-7 AT, bf16-mixed + channels_last"]
    for row in rows[:3]:
        assert float(row.split(" | ")[1].split()[0]) > 0
    assert "sequential / batched" in rows[3] and "= x" in rows[3]
    assert rows[4].startswith("| AutoAttack (standard)") and "images/s" in rows[4]
