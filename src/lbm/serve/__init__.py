"""lbm.serve"""
