"""The GPU kit: everything the first (and every) short GPU run needs, built without a GPU.

    make gpu-kit            # python3 -m tools.gpukit build: .gpu/ (ignored), then the dry run
    make gpu-kit-dryrun     # python3 -m tools.gpukit dryrun: 100% cache hits, size, budget
    bash .gpu/run.sh        # on the GPU machine, from the checkout, with .gpu carried

stages.py: what runs there, in order of value, and how the time budget is dealt; kit.py: the
build and the dry run; run.py: the runner on the GPU machine (stages under timeouts, results
re-packed into $OUT after each stage).
"""
