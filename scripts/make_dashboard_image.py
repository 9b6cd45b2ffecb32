"""Regenerate docs/images/metrics-dashboard.png (run from the repo root: .venv/bin/python scripts/make_dashboard_image.py).

300 API, 150 MCP and 15 CLI calls through the real servers, then the MetricsDashboard chart as PNG.
"""
from nexus_lab import AIAssistant, Nexus, NexusClient, deploy_multi_channel
from nexus_lab.jupyter.widgets import MetricsDashboard

app = Nexus(api_port=0, mcp_port=0, enable_monitoring=True)
deploy_multi_channel(AIAssistant(), app, "assistant")
with app.running():
    with NexusClient(app.api_url, mcp_url=app.mcp_url) as c:
        for i in range(300):
            c.run("assistant", {"query": f"q{i}"})
        for i in range(150):
            c.run("assistant", {"query": f"m{i}"}, channel="mcp")
        for i in range(15):
            c.run("assistant", {"query": f"c{i}"}, channel="cli")
    dash = MetricsDashboard(app, auto_refresh=False)
    data = bytes(dash.image.value)
    open("docs/images/metrics-dashboard.png", "wb").write(data)
    print(len(data), dash.categories)
    dash.close()
app.close()
