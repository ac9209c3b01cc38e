"""`python -m stack up|down|status|env|deploy|worker-kit [DIR]` (the Makefile's stack targets).

up      start the stack (a second `up` finds it running and does nothing)
down    stop every service; no process is left
status  each service, its state, address and health (exit 3 unless all are healthy)
env     a line that sources <state>/env (the clients' environment, credentials included): for
        `eval "$(make -s stack-env)"`; the secrets stay in the mode-600 file, never printed
deploy  `prefect deploy` of prefect.yaml on the stack, with the cron of params.yaml
worker-kit [DIR]
        what a worker on another host needs: DIR/env (mode 600) and DIR/tls/ (docs/team-stack.md);
        DIR: <stack.state_dir>/worker-kit unless given
"""
import sys
from pathlib import Path

from stack import control
from stack.settings import Stack
from vae_pipeline.errors import exit_code

USAGE = "usage: python -m stack {up,down,status,env,deploy} | python -m stack worker-kit [DIR]"


def main(argv: list[str]) -> int:
    if not (len(argv) == 1 and argv[0] in ("up", "down", "status", "env", "deploy", "worker-kit")
            or len(argv) == 2 and argv[0] == "worker-kit"):
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
            print(control.env_source_line(stack))
        elif command == "worker-kit":
            control.worker_kit(stack, Path(argv[1]) if len(argv) == 2 else None)
        else:
            from stack.deploy import deploy
            deploy(stack)

    return exit_code(act)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
