"""Baseline of the submit function for bench/run.py: a functions-framework HTTP function that
reads the request body and answers 200, empty (functions-framework --target=trivial)."""

import functions_framework


@functions_framework.http
def trivial(request):
    request.get_data()
    return ""
