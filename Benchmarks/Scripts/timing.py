"""The timing rule shared by the PyTorch benchmark scripts: one warm-up run, then the median of `repeats` runs, in ms."""
import time


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]
