"""qvl_kernels stands alone: importing it pulls in neither transformers nor the qvl app."""

import subprocess
import sys


def test_importing_qvl_kernels_loads_only_torch_and_triton():
    code = (
        "import sys, qvl_kernels\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'qvl'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
