"""What the Python benchmarks share about the processes they start."""
import signal, subprocess


def stop(process, grace=30):
    """SIGTERM to `process` (a Popen), SIGKILL if it has not exited within
    `grace` s; reaped either way."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
