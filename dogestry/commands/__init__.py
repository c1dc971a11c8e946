"""One module per command; each has add_arguments(parser) and run(ctx, args).

The plumbing modules also export the functions porcelain calls in-process.
"""
