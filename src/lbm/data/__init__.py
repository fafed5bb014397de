"""lbm.data"""
