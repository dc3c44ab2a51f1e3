#!/bin/sh
# The last task of a real chain starts the worker; the demo only says so.
echo "worker would start now; state lives in $RUNNER_STATE_DIR"
