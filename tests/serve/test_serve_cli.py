"""`r1ov serve` user errors: one `error:` line, exit 2, before any model is loaded or port is held."""

import socket

from r1ov_jax.cli import main


def test_serve_user_errors_are_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path), "--port", str(port)]) == 2
    assert main(["serve", "--model", str(tmp_path), "--port", "70000"]) == 2
    assert main(["serve", "--model", str(tmp_path), "--max-batch", "0"]) == 2
    assert main(["serve", "--model", str(tmp_path), "--max-batch", "4", "--batch-buckets", "2,8"]) == 2
    assert main(["serve", "--model", str(tmp_path), "--batch-buckets", "two"]) == 2
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 6
    for text in ("Address already in use", "--port must be in 1..65535", "--max-batch must be >= 1",
                 "--batch-buckets must lie in 1..4", "comma-separated integers", "missing"):  # fmt: skip
        assert text in err, text
