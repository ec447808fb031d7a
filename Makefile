# Common verbs; each is a script in scripts/ that works from any directory.
# Extra pytest or demo arguments: make test ARGS="features/unary", make demo ARGS="--port 8080".
.PHONY: install test lint demo stress

install:
	bash scripts/setup.sh

test:
	bash scripts/test.sh $(ARGS)

lint:
	bash scripts/lint.sh

demo:
	bash scripts/demo.sh $(ARGS)

stress:
	bash scripts/stress.sh $(ARGS)
