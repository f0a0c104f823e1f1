"""vitpareto.search"""
