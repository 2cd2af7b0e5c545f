"""The run logger every engine shares: console lines and ``logging`` records print above the
progress bar (never into it), and the bar counts to where the run stops (``--max-steps``)."""
import logging
import sys

import torch
from torch.utils.data import TensorDataset

from mixedae.classification import engine as E
from mixedae.runtime.run_logger import RunLogger


def test_log_lines_during_a_bar_print_above_it(tmp_path, capsys):
    handler = logging.StreamHandler(sys.stderr)  # the console handler of setup_logging
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.root.addHandler(handler)
    try:
        lg = RunLogger(tmp_path, desc="bar", total=10, tensorboard=False)
        lg.step(3)
        lg.bar.refresh()  # the bar is on the line now, without a newline
        logging.getLogger("mixedae.test").warning("a log line")
        lg.info("an info line")
        lg.step(1)
        lg.close()
        assert logging.root.handlers.count(handler) == 1  # console logging restored
        logging.getLogger("mixedae.test").warning("after the bar")
    finally:
        logging.root.removeHandler(handler)
    cap = capsys.readouterr()
    err = cap.err.split("\n")  # "\r" (the bar's redraws) is not a line end here
    # the log line starts a line of its own: after the bar is cleared (a "\r"), nothing of
    # the bar precedes it; before, the record was appended to "bar:  30%|... 3/10 [...]"
    assert [x.rsplit("\r", 1)[-1] for x in err if "a log line" in x] == ["WARNING a log line"]
    line = next(x for x in err if "a log line" in x)
    assert line.split("\r")[-2].strip() == ""  # the bar was blanked out just before it
    assert "WARNING after the bar" in err
    assert "an info line" in cap.out.split("\n")
    assert "3/10" in cap.err and "4/10" in cap.err  # the bar was drawn before and after


def test_bar_counts_to_max_steps(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    lg = RunLogger(tmp_path, desc="train", total=100, tensorboard=False)
    out = E.train_loop(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       train_set=TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,))),
                       loss_fn=torch.nn.functional.cross_entropy, batch_size=4,
                       total_steps=100, lr_at=lambda s: 0.1, device=torch.device("cpu"),
                       amp=False, logger=lg, stop_after=3)
    lg.close()
    err = capsys.readouterr().err
    assert out["step"] == 3 and "3/3 [" in err and "/100" not in err  # never drawn as x/100


def test_warnings_without_logging_setup_print_above_the_bar(tmp_path, capsys, monkeypatch):
    """No handler configured (the classification commands): Python's last-resort handler
    would print the warning into the bar; it goes through tqdm.write instead."""
    monkeypatch.setattr(logging.root, "handlers", [])
    lg = RunLogger(tmp_path, desc="bar", total=10, tensorboard=False)
    lg.step(2)
    lg.bar.refresh()
    logging.getLogger("mixedae.test").warning("non-finite gradients at step 3")
    lg.close()
    assert logging.root.handlers == []
    err = capsys.readouterr().err.split("\n")
    assert [x.rsplit("\r", 1)[-1] for x in err if "non-finite" in x] == [
        "non-finite gradients at step 3"]
