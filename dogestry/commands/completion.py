"""completion: print the shell code that enables tab completion for dogestry."""

SUMMARY = "print shell code that enables tab completion (bash, zsh, fish)"


def add_arguments(p):
    p.add_argument("shell", metavar="SHELL", choices=["bash", "zsh", "fish"], help="bash, zsh or fish")


def run(ctx, args):
    import argcomplete

    ctx.out.write(argcomplete.shellcode(["dogestry"], shell=args.shell))
    return 0
