# The two commands: `make run` and `make test`. Everything else is a building block.
.PHONY: install run stop test lint typecheck protos bench stack-start stack-stop stack-status

install:
	@scripts/bootstrap.sh

run: install
	@scripts/run-local.sh

stop:
	@scripts/services.sh stop
	@scripts/stack/stop.sh

test: install
	@scripts/test.sh

lint: install
	@scripts/uv.sh run --frozen ruff check .
	@scripts/uv.sh run --frozen ruff format --check .

typecheck: install
	@scripts/uv.sh run --frozen mypy

protos: install
	@scripts/uv.sh run --frozen python scripts/gen-protos.py

bench: install
	@scripts/uv.sh run --frozen python bench/handoff.py

stack-start:
	@scripts/stack/start.sh

stack-stop:
	@scripts/stack/stop.sh

stack-status:
	@scripts/stack/status.sh
	@scripts/services.sh status
