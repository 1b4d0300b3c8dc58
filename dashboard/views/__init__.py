"""The pages of the dashboard, one module each (`TITLE`, `render(db, viewer, start, end)`).

The package is not called `pages`: Streamlit would take a `pages/` folder beside
app.py for its own multipage layout and run each file in it as a page.
"""

from agentwatch.dashboard.views.common import SEVERITY_BADGE, STATUS_BADGE

__all__ = ["SEVERITY_BADGE", "STATUS_BADGE"]
