"""Local stand-in for MedImageParse (2D) on an Azure ML managed online endpoint.

It speaks the endpoint's wire protocol (``POST /score``, bearer auth, ``azureml-model-deployment`` routing,
424 model errors, 408/429 limits) so clients and workers can be tested without the real model. It is an
EMULATOR: its masks come from classical image processing (Otsu threshold, connected components), not from
MedImageParse.

Modules: ``config`` (knobs), ``app`` (factory, middleware), ``score`` (scoring route), ``protocol`` (wire
format), ``segment`` / ``categories`` (masks and labels), ``faults`` (latency, capacity, throttling, fault
injection), ``auth`` / ``tokens`` / ``identity`` (keys, tokens, managed-identity route), ``admin`` (test
API), ``state`` (per-app state), ``cli`` (``medparse emulator``).
"""
