import os
import sys
import threading

import pytest

from rscrisis.predict.threads import HELPER_NICE, BackgroundConsumer, Prefetcher


def test_prefetcher_yields_in_order_and_reraises_reader_errors():
    assert list(Prefetcher(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(Prefetcher(broken()))


def test_prefetcher_stops_its_thread_when_the_consumer_gives_up():
    before = threading.active_count()
    for item in Prefetcher(iter(range(10_000)), depth=1):
        if item == 3:
            break
    assert threading.active_count() == before


def test_consumer_handles_everything_and_reraises_the_first_error():
    seen = []
    c = BackgroundConsumer(seen.append)
    for i in range(20):
        c.put(i)
    c.close()
    assert seen == list(range(20))

    def fail(item):
        raise ValueError(f"bad {item}")

    c = BackgroundConsumer(fail)
    c.put(7)
    with pytest.raises(ValueError, match="bad 7"):
        c.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux")
def test_helper_threads_yield_the_cores_to_the_model_but_the_caller_keeps_its_priority():
    seen = []

    def record(_item):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    consumer = BackgroundConsumer(record)
    consumer.put(1)
    consumer.close()

    def source():
        yield os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert seen == [max(before, HELPER_NICE)]
    assert list(Prefetcher(source())) == [max(before, HELPER_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
