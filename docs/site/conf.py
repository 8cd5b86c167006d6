"""Sphinx configuration of the xenchannel documentation site, built by docs/site/build.sh.

The source tree Sphinx reads is generated: antsibull-docs writes the module, plugin and
role reference under collections/ from DOCUMENTATION and meta/argument_specs.yml, and
build.sh copies the hand-written guides from docs/*.md under guides/.
"""

project = "xenchannel.provision"
copyright = "xenchannel contributors"
title = "xenchannel documentation"
html_short_title = "xenchannel"

extensions = ["sphinx_antsibull_ext", "sphinx.ext.intersphinx", "myst_parser"]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# The guides use GitHub-flavoured tables and link each other as `other.md#anchor`.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

pygments_style = "ansible"
# antsibull-docs' pages expect this default for their literal blocks.
highlight_language = "YAML+Jinja"

html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False
html_theme_options = {"display_version": False}

# The generated pages link ansible-core's own docs (FQCN references such as
# ansible.builtin.copy) through intersphinx. Those inventories are fetched from
# docs.ansible.com, which a build machine may not reach: then Sphinx warns and
# renders the reference as text. The timeout bounds that wait.
intersphinx_mapping = {
    "python3": ("https://docs.python.org/3/", None),
    "ansible_devel": ("https://docs.ansible.com/projects/ansible/devel/", None),
}
intersphinx_timeout = 10

default_role = "any"
nitpicky = True
