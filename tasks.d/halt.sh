#!/bin/sh
# A real fleet powers the machine off here (e.g. `shutdown -h now`);
# this sample only logs, so that trying runner never turns a machine off.
echo "halt requested for this machine (sample halt task: not powering off)"
