"""The public API stays small: adding to it is a decision, not an accident."""

import subprocess
import sys

import mlsidecar


def test_public_api():
    assert sorted(mlsidecar.__all__) == ["EventClient", "__version__"]
    for name in mlsidecar.__all__:
        assert hasattr(mlsidecar, name)


def test_importing_the_client_pulls_in_no_dependency():
    code = ("import sys; import mlsidecar.client; "
            "bad = [m for m in ('orjson', 'aiohttp', 'prometheus_client', 'psutil', 'pynvml') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
