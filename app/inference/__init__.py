"""Model pool, dynamic batching and backends.

OpenMP threads of torch (and ONNX Runtime) busy-wait between parallel regions by default. In a
server the event loop and the encode thread share the cores with them, so a spinning worker
steals the core the other one needs: measured on 2 cores under 64 clients, cold `embed` ran 3x
slower with the default ACTIVE policy than with PASSIVE. Set before torch is first imported
(everything that loads a backend imports this package first); an explicit environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
