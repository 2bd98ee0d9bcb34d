"""Quiet mode: what any library writes to stdout/stderr (Python or C level, this process or a
child) goes to the log file; sentiray's own lines and bars reach the terminal."""

import subprocess
import sys

from sentiray import console


def test_quiet_sends_everything_but_our_lines_to_the_log(tmp_path, capfd):
    log = tmp_path / "logs" / "demo.log"
    with console.quiet(str(log)) as path:
        assert path == str(log) and console.is_quiet()
        print("a library's print")
        sys.stderr.write("a warning on stderr\n")
        subprocess.run([sys.executable, "-c", "import os; os.write(1, b'a child process\\n')"], check=True)
        console.say("== step one")
        bar = console.progress(3, "work", unit="row", disable=False)  # a bar even where the terminal is a file
        bar.update(3)
        bar.close()
    assert not console.is_quiet()
    written = log.read_text()
    assert "a library's print" in written and "a warning on stderr" in written and "a child process" in written
    assert "== step one" not in written
    terminal = capfd.readouterr()
    assert "== step one" in terminal.out
    assert "3/3" in terminal.out + terminal.err
    assert "a library's print" not in terminal.out + terminal.err


def test_not_quiet_is_a_no_op(tmp_path, capsys):
    with console.quiet(str(tmp_path / "x.log"), enabled=False) as path:
        assert path is None
        console.say("live")
    assert "live" in capsys.readouterr().out
    assert not (tmp_path / "x.log").exists()
