"""``turnpike gateway``: the request path in front of the Tritons.

A functional core decides, a thin aiohttp shell does the I/O:

* ``config``    the YAML file: tiers, tenants, per-deployment limits (pydantic, strict)
* ``tenants``   request headers -> tenant and tier (API keys kept only as hashes)
* ``routing``   which ready replica gets the next request (least outstanding work)
* ``admission`` per-deployment slots, a weighted fair queue among tiers, shedding by tier
* ``hold``      requests waiting for a deployment with zero ready replicas
* ``buckets``   histogram bucket edges with one at every SLO threshold
* ``openai``    OpenAI completions/chat <-> Triton generate translation, SSE framing
* ``endpoints`` the Protocol the shell asks for ready pods, and a static implementation
* ``discovery`` ModelDeployments and ready pods -> the names each fleet answers to
* ``load``      the load document the operator polls (held requests: scale from zero)
* ``metrics``   prometheus_client families (shell)
* ``scrape``    Triton queue depth per pod, for routing (shell)
* ``proxy``     forwarding one request upstream, streaming (shell)
* ``watched``   list and watch of ModelDeployments and pods feeding ``discovery`` (shell)
* ``server``    the aiohttp application and ``run`` (shell)

Only the last five modules do I/O; everything above them is pure and
unit-tested without sockets.
"""
