"""The example's app: articles, comments, and the events they publish."""
