"""The manual cannot drift from the parser: every command has a page naming its options."""

import os
import re

from dogestry.commands import COMMANDS, build_parser
from dogestry.commands import is_global_option

MAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "man")


def _subparsers():
    """name -> subparser of every command; aliases (argparse lists them too) share their command's page."""
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return {c.name: action.choices[c.name] for c in COMMANDS}


def _text(page):
    with open(os.path.join(MAN, page)) as f:
        return f.read().replace("\\-", "-")


def test_every_command_has_a_page_listing_its_options_and_arguments():
    for name, sub in _subparsers().items():
        text = _text(f"dogestry-{name}.1")
        synopsis = text.split(".SH SYNOPSIS", 1)[1].split(".SH", 1)[0]
        assert f"dogestry {name}" in synopsis.replace("\n.B ", " ").replace(".B ", "")
        for action in sub._actions:
            if is_global_option(action):
                continue  # global options are in dogestry(1), before or after the command
            if action.option_strings and action.dest != "help":
                assert any(o in synopsis for o in action.option_strings), (name, action.option_strings)
            elif not action.option_strings:
                assert action.metavar.replace("-", "") in synopsis.replace("-", ""), (name, action.metavar)


def test_aliases_run_their_command_and_are_named_on_its_page():
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in COMMANDS:
        for alias in command.aliases:
            assert choices[alias] is choices[command.name]
            assert f"dogestry {alias}" in _text(f"dogestry-{command.name}.1"), (command.name, alias)


def test_every_page_has_the_standard_sections():
    for name in _subparsers():
        text = _text(f"dogestry-{name}.1")
        # man(1) and `dogestry help` show the .TH title: it must be the page's own name
        assert text.startswith(f".TH DOGESTRY-{name.upper()} 1 "), (name, text.split("\n", 1)[0])
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
            assert f".SH {section}" in text, (name, section)


def test_plumbing_pages_give_their_record_format_and_porcelain_pages_their_pipeline():
    from dogestry.commands import PLUMBING

    for command in COMMANDS:
        text = _text(f"dogestry-{command.name}.1")
        if command.category == PLUMBING:
            assert ".SH OUTPUT" in text or "record" in text, command.name
    assert "dogestry update-ref --stdin" in _text("dogestry-push.1").replace("\\", "")
    assert "build-load-tar --stdin --missing-in-docker --load" in _text("dogestry-pull.1")


def test_dogestry_1_lists_every_command_and_global_option():
    text = _text("dogestry.1")
    for command in COMMANDS:
        assert f"dogestry-{command.name}" in text or f"dogestry {command.name}" in text
    for option in ("--config", "--docker-host", "--quiet", "--verbose", "--debug"):
        assert option in text


def test_pages_are_installed_by_setup_cfg():
    root = os.path.dirname(MAN)
    with open(os.path.join(root, "setup.cfg")) as f:
        cfg = f.read()
    assert re.search(r"share/man/man1 = man/\*\.1", cfg) and re.search(r"share/man/man5 = man/\*\.5", cfg)
