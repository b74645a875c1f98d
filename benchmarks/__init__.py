# ``python -m benchmarks`` starts many Python processes: let them cache their byte-code
# (see stack/__init__.py).
import stack

stack.cache_byte_code()
