"""``python -O -m hubproxy.workers --index=I --link=SOCKET -- <hub start flags>``: one worker
process (``worker.py``). Worker 0 starts these; nobody else needs to."""

import sys

from hubproxy.workers.worker import main

sys.exit(main())
