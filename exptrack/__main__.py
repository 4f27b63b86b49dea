import logging
import os
import sys

from .cli import main

code = main()
if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
    # Under torchrun, a process that trained in a gloo group crashes in about a third of runs
    # while the interpreter shuts down (SIGABRT in torch 2.14.1, after destroy_process_group;
    # tests/ddp_workers.py has the same guard): the launcher then kills the other ranks and
    # the command fails after a good run. The work is done and its records are closed, so the
    # process leaves without the interpreter's teardown, after flushing what it printed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
