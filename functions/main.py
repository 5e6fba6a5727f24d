"""Cloud Functions entry points. The logic lives in the gleanpipe package.

    functions-framework --source functions/main.py --target=submit
    functions-framework --source functions/main.py --target=load --signature-type=cloudevent
    functions-framework --source functions/main.py --target=deletions   (POST: retry pending deletions)
"""

import functions_framework

from gleanpipe import functions as gleanpipe_functions


@functions_framework.http
def submit(request):
    return gleanpipe_functions.submit(request)


@functions_framework.cloud_event
def load(cloud_event):
    gleanpipe_functions.load(cloud_event)


@functions_framework.http
def deletions(request):
    return gleanpipe_functions.deletions(request)
