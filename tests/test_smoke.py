from conftest import started


def test_tasks_run_in_byte_order_and_runner_exits_0(ws):
    for name in ["a", "z", "y", "0", "9"]:
        ws.task(name)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["0", "9", "a", "y", "z"]
