"""`python -m stack up|down|status|env|deploy` (the Makefile's stack targets).

up      start the stack (a second `up` finds it running and does nothing)
down    stop every service; no process is left
status  each service, its state, address and health (exit 3 unless all are healthy)
env     the `export` lines of the clients' environment (as in <state>/env)
deploy  `prefect deploy` of prefect.yaml on the stack, with the cron of params.yaml
"""
import sys

from stack import control
from stack.settings import Stack
from vae_pipeline.cli import exit_code

USAGE = "usage: python -m stack {up,down,status,env,deploy}"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down", "status", "env", "deploy"):
        print(USAGE, file=sys.stderr)
        return 2
    command = argv[0]

    def act():
        stack = Stack.from_params()
        if command == "up":
            control.up(stack)
        elif command == "down":
            control.down(stack)
        elif command == "status":
            return 0 if control.status(stack) else 3
        elif command == "env":
            print(control.env_text(stack), end="")
        else:
            from stack.deploy import deploy
            deploy(stack)

    return exit_code(act)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
