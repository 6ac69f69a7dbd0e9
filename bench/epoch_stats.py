"""The per-run summary both sides of bench/train_throughput.py print (no ctrflow or
DeepCTR imports: bench/deepctr_worker.py runs it in DeepCTR's virtualenv)."""
import resource
import statistics
import time


def cpu_seconds() -> float:
    """CPU seconds of this process: a load-independent cost (the machine may be shared)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed_epochs(fit_epoch, split_aucs, epochs: int):
    """``fit_epoch()`` ``epochs`` times, each timed (wall and CPU seconds), then ``split_aucs()``
    -> {split: AUC} untimed. Returns (epoch_s, epoch_cpu, {split: [AUC of each epoch]})."""
    epoch_s, epoch_cpu, aucs = [], [], {}
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), cpu_seconds()
        fit_epoch()
        epoch_s.append(time.perf_counter() - t0)
        epoch_cpu.append(cpu_seconds() - c0)
        for split, value in split_aucs().items():
            aucs.setdefault(split, []).append(value)
    return epoch_s, epoch_cpu, aucs


def epoch_summary(epoch_s, epoch_cpu, rows, valid_auc, test_auc) -> dict:
    """Throughput over the epochs after the first, and the test AUC at the best valid epoch.

    ``epoch_s`` / ``epoch_cpu``: wall and CPU seconds of each epoch; ``valid_auc`` /
    ``test_auc``: each epoch's AUC."""
    rates = [rows / s for s in epoch_s[1:]]
    best = max(range(len(valid_auc)), key=valid_auc.__getitem__)
    # train_examples_per_s: rows / time over those epochs (the harmonic mean of their rates)
    return {"train_examples_per_s": statistics.harmonic_mean(rates), "train_examples_per_s_best": max(rates),
            "epoch_examples_per_s": rates, "first_epoch_s": epoch_s[0],
            "train_cpu_us_per_example": statistics.median(epoch_cpu[1:]) / rows * 1e6,
            "best_epoch": best + 1, "valid_auc": valid_auc[best], "test_auc": test_auc[best],
            "train_rows": rows}
