"""The memory subprocess: ``python -m segnet.bench --memory-child NAME`` prints one JSON line."""

import json
import sys

from segnet.bench.memory import memory_child

if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
    print(json.dumps(memory_child(sys.argv[2])), flush=True)
else:
    print("usage: python -m segnet bench [--quick] [--levers] [--out FILE]", file=sys.stderr)
    sys.exit(2)
