#!/bin/sh
# Reads its settings the way every task does: through $RUNNER_CONFIG_CMD.
greeting=$($RUNNER_CONFIG_CMD -g hello.greeting --default "hello")
echo "$greeting from $RUNNER_TASK (try $RUNNER_TRY, iteration $RUNNER_ITERATION)"
echo "DEMO_ROLE=$DEMO_ROLE"
