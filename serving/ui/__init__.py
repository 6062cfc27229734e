"""The admin page (/ui): templates, static files, login and the view it renders."""
