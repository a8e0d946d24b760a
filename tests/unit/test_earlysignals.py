"""Start-up's signal handlers cover every signal the running master handles."""
import signal

from gateway import arbiter, earlysignals


def test_every_signal_the_master_handles_is_covered_from_the_start():
    assert set(arbiter.HANDLED) <= set(earlysignals.HANDLED)


def test_stop_signals_during_start_up_interrupt_and_others_are_remembered_once():
    early = earlysignals.EarlySignals()
    early.active = True  # as install() leaves it, without touching pytest's handlers
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGHUP, signal.SIGTTIN):
        early._on_signal(signum, None)
    try:
        early._on_signal(signal.SIGTERM, None)
    except earlysignals.StartupInterrupted as exc:
        assert exc.signum == signal.SIGTERM
    else:
        raise AssertionError("SIGTERM during start-up did not interrupt it")
    assert early.handover() == [signal.SIGHUP, signal.SIGTTIN, signal.SIGTTIN]
    early._on_signal(signal.SIGTERM, None)  # after the handover: not ours, no raise
