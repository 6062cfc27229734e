"""Hand-written everyday prompts for the behaviour suite (issue 10, item 6).

Written before any model's predictions on them were looked at, and not to be edited to make a model pass:
`EASY` are chores any small model gets right (arithmetic, greetings, translating a phrase, formatting,
one-line summaries); `HARD` are tasks where even a frontier model often fails (proofs, large designs,
subtle concurrency).
"""

from __future__ import annotations

EASY: tuple[str, ...] = (
    "What is 2+2?",
    "What is 15 times 4?",
    "Add 128 and 256.",
    "Hi! How are you today?",
    "Good morning, can you say hello back?",
    "Translate 'thank you very much' into French.",
    "How do you say 'where is the train station' in Spanish?",
    "Translate 'good night' to German.",
    "Format this as JSON: name Alice, age 30, city Paris.",
    "Put these words in alphabetical order: banana, apple, cherry.",
    "Convert this list to a comma-separated line:\n- red\n- green\n- blue",
    "Summarise in one line: The meeting was moved from Tuesday to Thursday because the room was booked.",
    "Give a one-sentence summary: Sales rose 5% in March thanks to the spring promotion.",
    "Make this sentence all uppercase: the quick brown fox.",
    "What day comes after Monday?",
)

HARD: tuple[str, ...] = (
    "Prove that there are infinitely many twin primes.",
    "Prove that every planar graph is 4-colourable, giving a complete proof without computer assistance.",
    "Prove or disprove: for every n > 1 the Ramsey number R(n, n) is at most 4^n / n, with a rigorous argument.",
    "Give a rigorous proof of the Jordan curve theorem for arbitrary continuous closed curves in the plane.",
    "Prove that the Riemann zeta function has no zeros with real part in (1/2, 1), and explain each step.",
    "Implement a lock-free concurrent hash map in Rust that supports resize without blocking readers, "
    "and argue why it is linearizable under the C++20 memory model.",
    "Find the data race in a Java double-checked locking singleton without volatile, explain which "
    "reorderings the JMM allows, and write a correct lock-free alternative with a proof of safety.",
    "Design a wait-free multi-producer multi-consumer queue with bounded memory and prove it has no ABA problem.",
    "Write a distributed consensus protocol that tolerates Byzantine faults with n = 3f + 1 replicas, "
    "and prove safety and liveness under partial synchrony.",
    "Explain and fix the deadlock that can happen when two goroutines acquire two mutexes in opposite order "
    "inside nested select statements with timeouts, and prove the fix cannot livelock.",
    "Design the complete architecture of a globally distributed, strongly consistent database with "
    "multi-region transactions, including the clock synchronisation scheme, failure handling and a migration plan.",
    "Write a step-by-step plan to refactor a 20,000-line legacy C++ codebase into modules with dependency "
    "injection, without breaking its public ABI, including the test strategy.",
    "Design a real-time bidding system handling 2 million requests per second with 10 ms p99 latency, "
    "specifying data structures, sharding, caching and the failure modes of every component.",
    "Derive the closed-form solution of the Black-Scholes equation with stochastic volatility and jumps, "
    "and prove the resulting pricing formula is arbitrage-free.",
    "Prove that P is not equal to NP, or explain precisely which known barrier (relativization, natural "
    "proofs, algebrization) each step of your argument avoids.",
)
