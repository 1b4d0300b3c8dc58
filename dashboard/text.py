r"""Text that agents send (span, agent, tenant, credential, resource, tool and model names, summaries quoting
them), made to show as typed inside the Streamlit calls that read markdown: st.markdown, st.caption, the
alerts, headers, and the labels of expanders, buttons, toggles, metrics and progress bars.

Written by hand: no maintained package escapes for Streamlit's markdown (CommonMark + GFM + its own
directives, icons, emoji shortcodes and formulas), and some of that is applied to the parsed text, after
backslash escapes are gone, so escaping alone is not enough (see `literal`).
"""

from __future__ import annotations

import re

# Every ASCII punctuation character: CommonMark lets a backslash make any of them literal, and each one
# starts some syntax (links, images, emphasis, code, headings, lists, tables, HTML, entities, directives
# `:red[...]`, formulas `$...$`, and Streamlit's rewrite of `:material/` before it parses).
_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

# Streamlit's frontend also rewrites the parsed text nodes, where escapes no longer show: GFM's literal
# autolinks (`http://`, `https://`, `www.`), icons `:material_x:`, `:streamlit:`, and arrows (`->`, `--`,
# `>=` between spaces). A word joiner (U+2060, zero width, no line break) inside each such run keeps it from
# matching; the text reads the same. Emoji `:smile:` need none: Streamlit loads them only when the source
# has `:name:` unescaped. An e-mail address (`a@b.co`) is left to become a mailto: link: its target is the
# text shown, nothing is fetched, and viewers' names are addresses that people copy.
JOINER = "\u2060"
_BREAKS = re.compile(r"(?<=:)(?=//|material_|streamlit:)"  # a scheme's ://, :material_icon:, :streamlit:
                     r"|(?i:(?<=www)(?=\.))"  # www.host
                     r"|(?:(?<=^[<>~-])|(?<= [<>~-]))(?=(?:->|-|>|=)(?: |$))")  # <-> -> <- -- >= <= ~=


def literal(text) -> str:
    r"""`text` (anything; str() of it) to draw inside markdown as typed, on one line: no link, image,
    emphasis, heading, list, table, HTML, icon, emoji, color or formula of its own.

    Whitespace runs (newlines included) become one space, as HTML would show them anyway.

    >>> print(literal("![x](http://h.io/i.png) *a*\n$x$ :red[b] <b>").replace(JOINER, "|"))
    \!\[x\]\(http\:|\/\/h\.io\/i\.png\) \*a\* \$x\$ \:red\[b\] \<b\>
    >>> literal(":material/home: :material_home: www.h.io a@b.co a -> b").replace(JOINER, "|")
    '\\:material\\/home\\: \\:|material\\_home\\: www|\\.h\\.io a\\@b\\.co a \\-|\\> b'
    >>> literal("acme-prod/agent_7 gpt-4.1 arn:aws:iam::1:role/x")  # identifiers keep every character
    'acme\\-prod\\/agent\\_7 gpt\\-4\\.1 arn\\:aws\\:iam\\:\\:1\\:role\\/x'
    """
    flat = _BREAKS.sub(JOINER, " ".join(str(text).split()))
    return "".join("\\" + c if c in _PUNCTUATION else c for c in flat)


def code(text) -> str:
    r"""`text` as inline code when it can be, shown as typed all the same; else `literal(text)`: a backtick would
    end the code span, and Streamlit rewrites `:material/` even inside one.

    >>> print(code("acme/agent-1"), code("a`b"))
    `acme/agent-1` a\`b
    """
    flat = " ".join(str(text).split())
    return f"`{flat}`" if flat and "`" not in flat and ":material/" not in flat else literal(flat)
