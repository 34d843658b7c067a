# The harness's resume check: on the run's first L1 (LAB_RESUME=0) this test reports a result and then goes silent,
# as a stalled L1 does; the watchdog kills that L1, and the run must resume here on a fresh one, where it passes.
# The result of the silent try must not count.
if [ "${LAB_RESUME:-0}" = 0 ]; then
    echo "TEST-RESULT lab-resume.silent-try-discarded fail this result came from the try that went silent"
    sleep 600
fi
echo "TEST-RESULT lab-resume.resumed ok"
