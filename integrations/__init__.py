"""tierwise inside other systems. Each integration talks to a running tierwise over HTTP and imports nothing from
serving/ or training/, so it installs beside the system it plugs into (`pip install tierwise[litellm]`)."""
