from rag_rerank.cli import main

main()
